"""The MCP server: one more door onto search, ask and the document list, for MCP clients (Claude Desktop, IDEs,
agents). `tools.py` declares the three tools once; `doors.py` is what they call (the services in this process, within
a caller's key, or a running `kb serve` over its API); `http.py` mounts streamable HTTP at /mcp in the Litestar app,
behind the app's own keys, rate limits and headers; `stdio.py` serves `kb mcp`; `schemas.py` holds the results'
wire types."""
