"""Code that both the frontend and the workers import: formats and records."""
