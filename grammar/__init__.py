"""The nfc rule grammar, shipped as package data (rules.lark)."""
