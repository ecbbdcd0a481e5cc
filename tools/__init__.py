"""Scripts that generate the committed fixtures; a package so examples can import tools.digits_data."""
