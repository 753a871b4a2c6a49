//! trustfold core
