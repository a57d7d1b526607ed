//! Distillery engine
