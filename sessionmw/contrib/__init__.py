"""Framework integrations: :mod:`sessionmw.contrib.flask` and :mod:`sessionmw.contrib.django`.

Each is imported on its own, so installing one framework never requires the other.
"""
