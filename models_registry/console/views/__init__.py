"""The console: server-rendered pages, kept live with HTMX fragments.

One function view per page. Each renders `console/<page>.html`, or only one of its
`{% partialdef %}` fragments (`page.html#fragment`) when the request comes from HTMX, so
every page also reads without JavaScript (links and forms keep a plain href/action).
Everyone logged in reads; only staff edit (checked here, never only in a template).
"""
