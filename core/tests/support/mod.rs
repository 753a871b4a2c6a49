pub mod forge;
pub mod scenarios;
