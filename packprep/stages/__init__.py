"""Pure stage functions: arrays in, arrays out. No paths, prints or globals."""
