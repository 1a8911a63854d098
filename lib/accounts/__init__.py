"""Accounts shared by the TCP service and the UDP hub: the one name rule and
salted scrypt password hashing (users.txt records)."""
