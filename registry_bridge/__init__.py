"""The HTTP registry (JSON API, legacy text API, HTML pages, SQLite store) and the node-side bridge."""
