"""The example's one app: customers and their configuration."""
