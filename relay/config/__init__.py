"""Settings: one table (``settings.Settings``) read from a TOML file and the environment by
``loading.load_settings``; ``values`` holds the parts, ``keys`` what the table implies."""
