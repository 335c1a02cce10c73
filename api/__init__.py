"""The HTTP/JSON API for apps, kiosks, web shops and a programme's back office (api/README.md).

Money moves only as ISO 8583 through the switch (api/acquirer.py, api/payments.py); reads and card
management call the host's functions. Nothing imports ``api`` (the console is served by this process
but is its own package).
"""
