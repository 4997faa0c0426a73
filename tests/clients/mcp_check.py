"""Drives pgsluice's MCP endpoint with the official MCP Python SDK, for tests/mcp.rs.

argv[1] is a JSON plan:
  {"url": "http://.../mcp", "token": "...", "mode": "auto" | "legacy",
   "stdio": {"command": "...", "args": [...], "env": {...}}   (instead of url and token),
   "calls": [[tool, arguments], ...], "resources": true}
Prints one JSON object: the negotiated protocol version, the tool names with their
annotations, each call's result (isError, structuredContent, text), and the resources.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def dump(model):
    """A result as its JSON on the wire (camelCase), whatever the SDK calls its fields."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def result_json(r):
    d = dump(r)
    return {
        "isError": bool(d.get("isError")),
        "structuredContent": d.get("structuredContent"),
        "text": "\n".join(c["text"] for c in d.get("content", []) if c.get("type") == "text"),
    }


async def main(plan):
    if "stdio" in plan:
        s = plan["stdio"]
        server = StdioServerParameters(command=s["command"], args=s["args"], env=s.get("env"))
    else:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {plan['token']}"}, timeout=60)
        server = streamable_http_client(plan["url"], http_client=http)
    out = {}
    async with Client(server, mode=plan.get("mode", "auto")) as client:
        out["protocol"] = client.protocol_version
        out["server"] = dump(client.server_info)["name"] if client.server_info else None
        tools = await client.list_tools()
        out["tools"] = {}
        for t in dump(tools)["tools"]:
            notes = t.get("annotations", {})
            out["tools"][t["name"]] = {
                "readOnlyHint": notes.get("readOnlyHint"),
                "destructiveHint": notes.get("destructiveHint"),
                "hasOutputSchema": "outputSchema" in t,
            }
        out["results"] = []
        for name, args in plan.get("calls", []):
            out["results"].append(result_json(await client.call_tool(name, args)))
        if plan.get("resources"):
            listed = dump(await client.list_resources())
            out["resources"] = [r["uri"] for r in listed["resources"]]
            templates = dump(await client.list_resource_templates())
            out["templates"] = [t["uriTemplate"] for t in templates["resourceTemplates"]]
            out["read"] = {}
            for uri in plan.get("read", []):
                got = dump(await client.read_resource(uri))
                out["read"][uri] = json.loads(got["contents"][0]["text"])
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
