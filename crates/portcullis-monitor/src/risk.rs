//! The behavioural risk engine (placeholder).
