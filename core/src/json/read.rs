//! Reading JSON: see the [module docs](super).
