"""The OpenAPI document rendered as one static HTML page: no scripts, no fonts, nothing fetched.

Rendered on the server so `/docs` works offline and behind any proxy, and needs no front-end
dependency; the page is a reading of `/openapi.json`, never a second source of truth.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from export_service.app.openapi import Document

_CODE = re.compile(r"`([^`]+)`")

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:24px 40px}
header h1{margin:0 0 6px;font-size:26px}
header p{margin:4px 0;max-width:1000px;color:#d5d9e2}
header a{color:#9cc3ff}
header code{background:#333c52;color:#fff}
main{display:flex;gap:32px;padding:24px 40px;align-items:flex-start}
nav{position:sticky;top:16px;min-width:300px;background:#fff;border:1px solid #dde1e8;
border-radius:8px;padding:12px 16px}
nav h2{font-size:13px;text-transform:uppercase;color:#69718a;margin:12px 0 6px}
nav a{display:block;color:#1d2330;text-decoration:none;padding:2px 0;font-size:14px}
nav a:hover{text-decoration:underline}
.content{flex:1;min-width:0}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:16px 24px;
margin-bottom:20px;overflow-x:auto}
section h2{margin:0 0 8px;font-size:20px;display:flex;gap:10px;align-items:center;
flex-wrap:wrap}
h3{font-size:15px;margin:16px 0 6px;color:#3b4356}
.method{font:bold 12px/1 ui-monospace,Menlo,Consolas,monospace;color:#fff;padding:5px 8px;
border-radius:4px;text-transform:uppercase}
.get{background:#2f7d4f}.post{background:#2f5fb3}.delete{background:#b33a2f}
.put,.patch{background:#a86b12}
.path{font:600 17px ui-monospace,Menlo,Consolas,monospace}
.auth{font-size:12px;padding:3px 8px;border-radius:10px;background:#fdf0d5;color:#7a5300}
.auth.none{background:#e6f4ea;color:#22613a}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
code{background:#eef0f4;padding:1px 4px;border-radius:3px}
pre{background:#1d2330;color:#e8ebf2;padding:12px 14px;border-radius:6px;overflow-x:auto}
pre code{background:none;padding:0}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;border-bottom:1px solid #e6e9ef;padding:6px 8px;vertical-align:top}
th{color:#69718a;font-weight:600;font-size:12px;text-transform:uppercase}
.status{font-weight:700}.s2{color:#2f7d4f}.s4{color:#b36b00}.s5{color:#b33a2f}
.muted{color:#69718a}
@media (max-width:900px){main{flex-direction:column;padding:16px}header{padding:16px}
nav{position:static;min-width:0;width:100%;box-sizing:border-box}.content{width:100%}}
"""


def _text(value: str) -> str:
    """Escape, then show `backticked` words as code (the document's descriptions use them)."""
    return _CODE.sub(r"<code>\1</code>", html.escape(value))


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _link(name: str) -> str:
    return f'<a href="#schema-{html.escape(name)}"><code>{html.escape(name)}</code></a>'


def type_of(schema: dict[str, Any]) -> str:
    """A short, linked reading of a JSON Schema: `ExportView`, `array of ExportFileView`, …"""
    if "$ref" in schema:
        return _link(_ref_name(schema["$ref"]))
    if "anyOf" in schema:
        return " | ".join(type_of(branch) for branch in schema["anyOf"])
    if "const" in schema:
        return f"<code>{html.escape(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{html.escape(str(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    if "format" in schema:
        return f"{html.escape(str(kind))} ({html.escape(schema['format'])})"
    return html.escape(str(kind))


def constraints_of(schema: dict[str, Any]) -> str:
    parts = []
    if "minimum" in schema and "maximum" in schema:
        parts.append(f"{schema['minimum']} ≤ value ≤ {schema['maximum']}")
    elif "minimum" in schema:
        parts.append(f"≥ {schema['minimum']}")
    elif "maximum" in schema:
        parts.append(f"≤ {schema['maximum']}")
    for key in ("minLength", "maxLength"):
        if key in schema:
            parts.append(f"{key} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern <code>{html.escape(schema['pattern'])}</code>")
    if "default" in schema:
        parts.append(f"default <code>{html.escape(json.dumps(schema['default']))}</code>")
    for branch in schema.get("anyOf", ()):
        nested = constraints_of(branch)
        if nested:
            parts.append(nested)
    return "; ".join(parts)


def _conditions(schema: dict[str, Any]) -> str:
    """`if {a: const} then required [b]` → "When a is x: b is required."."""
    if "if" not in schema or "then" not in schema:
        return ""
    whens = [
        f"<code>{html.escape(name)}</code> is <code>{html.escape(json.dumps(prop['const']))}</code>"
        for name, prop in schema["if"].get("properties", {}).items()
        if "const" in prop
    ]
    needs = ", ".join(f"<code>{html.escape(n)}</code>" for n in schema["then"].get("required", ()))
    if not whens or not needs:
        return ""
    return f"<p>When {' and '.join(whens)}: {needs} required.</p>"


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    out = [f'<section id="schema-{html.escape(name)}"><h2><code>{html.escape(name)}</code></h2>']
    if "description" in schema:
        out.append(f"<p>{_text(schema['description'])}</p>")
    properties: dict[str, Any] = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", ()))
        out.append(
            "<table><tr><th>field</th><th>type</th><th>required</th><th>constraints</th>"
            "<th>description</th></tr>"
        )
        for prop, sub in properties.items():
            description = sub.get("description") or next(
                (b["description"] for b in sub.get("anyOf", ()) if "description" in b), ""
            )
            out.append(
                f"<tr><td><code>{html.escape(prop)}</code></td><td>{type_of(sub)}</td>"
                f"<td>{'yes' if prop in required else ''}</td><td>{constraints_of(sub)}</td>"
                f"<td>{_text(description)}</td></tr>"
            )
        out.append("</table>")
        extra = schema.get("additionalProperties")
        if extra is False:
            out.append('<p class="muted">No other fields.</p>')
        elif extra is True or "additionalProperties" not in schema:
            out.append('<p class="muted">Other fields may follow.</p>')
    else:
        out.append(f"<p>{type_of(schema)}</p>")
    out.append(_conditions(schema))
    out.append("</section>")
    return "".join(out)


def _curl(base_url: str, method: str, path: str, op: dict[str, Any]) -> str:
    url = base_url + path
    for param in op.get("parameters", ()):
        if param["in"] == "path":
            url = url.replace("{" + param["name"] + "}", str(param.get("example", "ID")))
    lines = [f"curl -s -X {method.upper()} '{url}'"] if method != "get" else [f"curl -s '{url}'"]
    if op.get("security"):
        lines.append('-H "Authorization: Bearer $TOKEN"')
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    if "example" in body:
        lines.append("-H 'Content-Type: application/json'")
        lines.append(f"-d '{json.dumps(body['example'])}'")
    return " \\\n     ".join(lines)


def _operation_section(base_url: str, path: str, method: str, op: dict[str, Any]) -> str:
    secured = bool(op.get("security"))
    out = [
        f'<section id="op-{html.escape(op["operationId"])}">',
        f'<h2><span class="method {html.escape(method)}">{html.escape(method)}</span>'
        f'<span class="path">{html.escape(path)}</span>',
        '<span class="auth">Bearer JWT</span>'
        if secured
        else '<span class="auth none">no auth</span>',
        "</h2>",
        f"<p><strong>{_text(op.get('summary', ''))}</strong></p>",
        f"<p>{_text(op.get('description', ''))}</p>",
    ]
    params = op.get("parameters", [])
    if params:
        out.append(
            "<h3>Parameters</h3><table><tr><th>name</th><th>in</th><th>type</th>"
            "<th>required</th><th>constraints</th><th>description</th></tr>"
        )
        for p in params:
            out.append(
                f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{html.escape(p['in'])}</td>"
                f"<td>{type_of(p['schema'])}</td><td>{'yes' if p.get('required') else ''}</td>"
                f"<td>{constraints_of(p['schema'])}</td>"
                f"<td>{_text(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            out.append(
                f"<h3>Request body</h3><p><code>{html.escape(media)}</code>: "
                f"{type_of(content['schema'])}</p>"
            )
            if "example" in content:
                example = html.escape(json.dumps(content["example"], indent=2))
                out.append(f"<pre><code>{example}</code></pre>")
    out.append("<h3>Responses</h3><table><tr><th>status</th><th>description</th><th>body</th></tr>")
    for status, answer in op["responses"].items():
        bodies = ", ".join(
            f"<code>{html.escape(media)}</code> {type_of(c.get('schema', {}))}"
            for media, c in answer.get("content", {}).items()
        )
        out.append(
            f'<tr><td class="status s{html.escape(status[0])}">{html.escape(status)}</td>'
            f"<td>{_text(answer['description'])}</td><td>{bodies}</td></tr>"
        )
    out.append("</table>")
    out.append(
        f"<h3>Example</h3><pre><code>{html.escape(_curl(base_url, method, path, op))}</code></pre>"
    )
    out.append("</section>")
    return "\n".join(out)


def render_docs(document: Document, base_url: str) -> str:
    info = document["info"]
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    nav = ["<nav><h2>Operations</h2>"]
    for path, method, op in operations:
        nav.append(
            f'<a href="#op-{html.escape(op["operationId"])}"><span class="method '
            f'{html.escape(method)}">{html.escape(method)}</span> {html.escape(path)}</a>'
        )
    nav.append("<h2>Schemas</h2>")
    nav += [f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>' for name in schemas]
    nav.append("</nav>")
    title = html.escape(f"{info['title']} {info['version']}")
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title} API</title><style>{_CSS}</style></head><body>",
            f"<header><h1>{title}</h1><p>{_text(info.get('description', ''))}</p>",
            '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
            f"{html.escape(document['openapi'])}). Examples use <code>$TOKEN</code>: "
            "<code>export-service token --campaign demo-campaign --supreme</code> mints one "
            "for a local secret.</p></header>",
            "<main>",
            *nav,
            '<div class="content">',
            *(_operation_section(base_url, path, method, op) for path, method, op in operations),
            *(_schema_section(name, schema) for name, schema in schemas.items()),
            "</div></main></body></html>",
        ]
    )
