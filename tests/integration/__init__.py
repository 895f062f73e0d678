"""Integration tests: real node processes, real gRPC on 127.0.0.1, real mTLS; nothing mocked."""
