"""Framework integrations: :mod:`sessionmw.contrib.flask`, :mod:`sessionmw.contrib.django`
(an installed app: model, migrations, admin, commands), :mod:`sessionmw.contrib.drf` and
:mod:`sessionmw.contrib.fastapi`.

Each is imported on its own, so installing one framework never requires the other.
"""
