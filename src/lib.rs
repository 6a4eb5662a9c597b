//! shoal
