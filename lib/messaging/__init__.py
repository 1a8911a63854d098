"""Messaging between servers: the ActiveMQ link over STOMP (stomp.py)."""
