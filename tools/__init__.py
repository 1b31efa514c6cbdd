"""The tool contract and the tools (sandboxed Python, search, URL fetch, SQL, files, email).
Never imports `graph` or `app`."""
