"""Reading stored instances wherever they live: this machine's storage folder, or another node's
(fetched over its file endpoint and kept in a bounded local cache). See instance_reader."""
