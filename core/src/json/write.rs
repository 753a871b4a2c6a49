//! Writing canonical JSON: see the [module docs](super).
