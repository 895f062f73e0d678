"""The node runtime: adapts the sans-IO core to gRPC, SQLite and the OS."""
