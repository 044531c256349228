"""Everything a device runs: manifest, runtime backends, preprocessing, guard, classifier, result, explanation."""
