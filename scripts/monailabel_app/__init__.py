"""MONAI Label app serving the medical_matting bundle (see docs/monailabel.md).

Start it with MONAI Label's own command::

    monailabel start_server --app scripts/monailabel_app --studies DIR --conf models medical_matting

MONAI Label loads ``main.py`` by path and imports ``lib`` as a top-level package; the modules in
``lib`` therefore use relative imports only, so they can also be imported as
``scripts.monailabel_app.lib...`` (the tests do) without starting a server. Importing this package
does not import ``monailabel``.
"""
