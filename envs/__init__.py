"""Smart-charging environments."""
