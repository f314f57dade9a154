"""Records: reading any records file into prompt/response records (field presets, DataSpec), and mixing sources."""
