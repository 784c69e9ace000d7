"""The lookup benchmark of issue 7: mailmapd against Postfix's own mysql: and proxy:mysql: clients.

Run it with ``python bench/lookups.py`` (see its --help). Modules:

- ``datagen``: the tutorial's four tables at several sizes, and the keys that probe them;
- ``peers``: the processes a run starts (MariaDB, Postfix, mailmapd, the C ceiling) and the
  C programs it builds;
- ``parts``: the five measurements (sequential, concurrent, memory, efficiency, profile);
- ``report``: the machine, the targets, and the Markdown tables of docs/performance.md.
"""
