"""The gRPC frontend: serves the Edge Agent API and supervises the workers."""
