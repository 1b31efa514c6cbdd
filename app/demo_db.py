"""The demo database the `sql` tool reads by default: a small shop (customers, products,
orders, order items) with deterministic data, and a read-only role for the agent.

Writes are impossible by construction: the role may only SELECT, its sessions default to
read-only transactions with a statement timeout, and it owns nothing."""

from __future__ import annotations

import random
import secrets
from datetime import date, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEMO_DATABASE = "cadre_demo"
AGENT_ROLE = "cadre_agent_ro"

_SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
    country text NOT NULL, signed_up date NOT NULL);
CREATE TABLE products (
    id serial PRIMARY KEY, name text NOT NULL, category text NOT NULL,
    unit_price numeric(10, 2) NOT NULL CHECK (unit_price > 0));
CREATE TABLE orders (
    id serial PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers(id),
    ordered_on date NOT NULL, status text NOT NULL
        CHECK (status IN ('placed', 'shipped', 'delivered', 'returned')));
CREATE TABLE order_items (
    order_id integer NOT NULL REFERENCES orders(id), product_id integer NOT NULL
        REFERENCES products(id), quantity integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id));
COMMENT ON TABLE customers IS 'People who bought from the shop';
COMMENT ON TABLE orders IS 'One row per checkout';
COMMENT ON TABLE order_items IS 'Products and quantities in each order';
"""

_FIRST = ["Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jin", "Kai", "Lea"]
_LAST = ["Silva", "Berg", "Wang", "Okafor", "Novak", "Haddad", "Moreau", "Sato", "Kowalski"]
_COUNTRIES = ["PT", "SE", "CN", "NG", "CZ", "LB", "FR", "JP", "PL", "DE", "US", "BR"]
_PRODUCTS = [("Espresso beans 1kg", "coffee", 24.5), ("Filter papers", "coffee", 4.2),
             ("Grinder", "equipment", 89.0), ("Kettle", "equipment", 49.9),
             ("Green tea 250g", "tea", 11.0), ("Black tea 250g", "tea", 9.5),
             ("Mug", "accessories", 12.0), ("Scale", "equipment", 35.0),
             ("Oat milk 1l", "milk", 2.4), ("Cold brew jar", "equipment", 29.0),
             ("Decaf beans 1kg", "coffee", 26.0), ("Tea infuser", "accessories", 7.5)]


def ensure_demo_database(admin_url: str) -> str:
    """Create the demo database, its data and the read-only role (idempotent); returns the
    URL the `sql` tool should use (as that role)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (DEMO_DATABASE,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
        password = secrets.token_urlsafe(18)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AGENT_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB "
                             "NOCREATEROLE NOINHERIT CONNECTION LIMIT 50").format(
            sql.Identifier(AGENT_ROLE), sql.Literal(password)))
        for setting, value in (("default_transaction_read_only", "on"),
                               ("statement_timeout", "5s"),
                               ("idle_in_transaction_session_timeout", "30s")):
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(AGENT_ROLE), sql.Identifier(setting), sql.Literal(value)))
        # The agent's role may connect to the demo database and nowhere else.
        main = urlsplit(admin_url).path.lstrip("/") or "postgres"
        for database in {main, "postgres"}:
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(database)))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(DEMO_DATABASE)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(DEMO_DATABASE), sql.Identifier(AGENT_ROLE)))
    demo_admin = _with_database(admin_url, DEMO_DATABASE)
    with psycopg.connect(demo_admin, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('public.orders')").fetchone()[0]:  # type: ignore[index]
            with conn.transaction():
                conn.execute(_SCHEMA)
                _seed(conn)
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(AGENT_ROLE)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(AGENT_ROLE)))
    parts = urlsplit(demo_admin)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{AGENT_ROLE}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _seed(conn: psycopg.Connection) -> None:
    rng = random.Random(2026)
    start = date(2025, 1, 1)
    with conn.cursor() as cur:
        customers = []
        for i in range(200):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            customers.append((f"{first} {last}", f"{first.lower()}.{last.lower()}{i}@example.com",
                              rng.choice(_COUNTRIES), start + timedelta(days=rng.randrange(300))))
        cur.executemany("INSERT INTO customers (name, email, country, signed_up) "
                        "VALUES (%s, %s, %s, %s)", customers)
        cur.executemany("INSERT INTO products (name, category, unit_price) VALUES (%s, %s, %s)",
                        _PRODUCTS)
        orders, items = [], []
        for order_id in range(1, 1201):
            orders.append((rng.randrange(1, 201), start + timedelta(days=rng.randrange(330)),
                           rng.choices(["placed", "shipped", "delivered", "returned"],
                                       [1, 2, 8, 1])[0]))
            for product in rng.sample(range(1, len(_PRODUCTS) + 1), rng.randrange(1, 4)):
                items.append((order_id, product, rng.randrange(1, 5)))
        cur.executemany("INSERT INTO orders (customer_id, ordered_on, status) VALUES (%s, %s, %s)",
                        orders)
        cur.executemany("INSERT INTO order_items (order_id, product_id, quantity) "
                        "VALUES (%s, %s, %s)", items)
