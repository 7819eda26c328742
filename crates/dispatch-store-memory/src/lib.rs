//! In-process store (placeholder).
