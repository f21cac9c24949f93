"""Worked examples of extension points (see README: "Your own registration provider")."""
