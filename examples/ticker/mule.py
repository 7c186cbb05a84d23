"""The price mule: makes up a price for a few symbols every second and
publishes it on channel "prices" (every /ticker client of every worker gets it).

uWSGI runs it as a second mule, after the broadcast mule:

    uwsgi ... --mule=uwsgi_ws.mule:run --mule=examples/ticker/mule.py

(a mule given as a .py file runs as __main__).  See app.py beside it.
"""

import json
import random
import time

from uwsgi_ws.mule import publish

SYMBOLS = {"ACME": 100.0, "GLOBEX": 42.0, "INITECH": 7.5}


def main() -> None:
    prices = dict(SYMBOLS)
    while True:
        for symbol, price in prices.items():
            price = round(max(0.01, price * (1 + random.gauss(0, 0.005))), 2)
            prices[symbol] = price
            publish(json.dumps({"symbol": symbol, "price": price, "time": time.time(), "pid": "mule"}),
                    channel="prices")
        time.sleep(1)


if __name__ == "__main__":
    main()
