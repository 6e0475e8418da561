"""The landing page of `socketkit up`: what runs where, with live counters from the socket layer.

Later services mount their own pages under it (`LandingApp.mount("/mail", app, "Inbox")`) and get a
link here. Plain HTML and a few lines of JavaScript that poll /api/status: no build step.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Callable
from typing import Any

from socketkit.web.lifespan import answer_lifespan

StatusSource = Callable[[], list[dict[str, Any]]]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>socketkit</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.6rem}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}code{background:#f3f3f3;padding:0 .25rem}
</style></head><body>
<h1>socketkit is up</h1>
<p>Every service below runs in this one process. Counters refresh every two seconds.</p>
<table><thead><tr><th>service</th><th>listening on</th><th>open</th><th>accepted</th><th>refused</th>
<th>bytes in</th><th>bytes out</th><th>errors</th></tr></thead><tbody id="rows">%ROWS%</tbody></table>
<h2>Pages</h2><ul>%LINKS%</ul>
<script>
async function refresh(){
  try{
    const r=await fetch('api/status');const data=await r.json();
    const rows=document.getElementById('rows');rows.textContent='';
    for(const s of data.services){
      const tr=document.createElement('tr');
      let what=s.name+' \\u2014 '+s.description;
      if(s.details)what+=' ('+Object.entries(s.details).map(([k,v])=>k.replace(/_/g,' ')+' '+v).join(', ')+')';
      const cells=[what,s.endpoints.join(', '),s.open,s.accepted,s.refused,s.bytes_in,s.bytes_out,s.errors];
      cells.forEach((v,i)=>{const td=document.createElement('td');td.textContent=v;if(i>1)td.className='n';tr.appendChild(td)});
      rows.appendChild(tr);
    }
  }catch(e){}
}
setInterval(refresh,2000);
</script></body></html>
"""


@dataclasses.dataclass
class Mount:
    prefix: str
    app: Any
    title: str


class LandingApp:
    """ASGI app: / (the page), /api/status (JSON), and mounted service pages."""

    def __init__(self, status: StatusSource) -> None:
        self.status = status
        self.mounts: list[Mount] = []

    def mount(self, prefix: str, app: Any, title: str) -> None:
        self.mounts.append(Mount("/" + prefix.strip("/"), app, title))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        path = scope.get("path", "/")
        for m in self.mounts:
            if path == m.prefix or path.startswith(m.prefix + "/"):
                sub = dict(scope)
                sub["root_path"] = scope.get("root_path", "") + m.prefix
                await m.app(sub, receive, send)
                return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if path == "/":
            await _respond(send, 200, "text/html; charset=utf-8", self.page().encode())
        elif path == "/api/status":
            body = json.dumps({"services": self.status()}, indent=1).encode()
            await _respond(send, 200, "application/json", body)
        else:
            await _respond(send, 404, "text/plain; charset=utf-8", b"not found\n")

    def page(self) -> str:
        rows = []
        for s in self.status():
            what = f"{s['name']} \u2014 {s['description']}"
            if s.get("details"):
                what += " (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s["details"].items()) + ")"
            cells = [what, ", ".join(s["endpoints"])]
            cells += [str(s[k]) for k in ("open", "accepted", "refused", "bytes_in", "bytes_out", "errors")]
            rows.append("<tr>" + "".join(
                f"<td{' class=n' if i > 1 else ''}>{html.escape(c)}</td>" for i, c in enumerate(cells)) + "</tr>")
        links = "".join(f'<li><a href="{html.escape(m.prefix.lstrip("/"))}/">{html.escape(m.title)}</a></li>'
                        for m in self.mounts) or "<li>none yet</li>"
        return _PAGE.replace("%ROWS%", "".join(rows)).replace("%LINKS%", links)


async def _respond(send: Any, status: int, ctype: str, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})

