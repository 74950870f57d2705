"""The sandbox's public demo server and secret, and the path it serves (MMOLove's).

Plain names in a module of their own, so the command line's help can show them without
importing the sandbox and its web server.
"""

DEMO_SERVER_ID = "srv-demo"
DEMO_SECRET = "demo-secret-not-for-production"
EVENT_PATH = "/api/referral/events"
