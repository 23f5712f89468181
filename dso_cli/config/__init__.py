"""Configuration: where the Hydra config files live, the schemas that type and close them, and the
checks composition cannot make."""
