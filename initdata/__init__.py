"""CoCo initdata documents, signed policy bundles and their trust roots."""
