-- A tiny shop database for the SQL agent example (loaded into an in-memory SQLite per rollout).
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL);
INSERT INTO customers VALUES (1, 'Ada', 'London'), (2, 'Grace', 'New York'), (3, 'Alan', 'London'),
                             (4, 'Edsger', 'Amsterdam'), (5, 'Barbara', 'Boston');
INSERT INTO products VALUES (1, 'Keyboard', 'hardware', 49.0), (2, 'Mouse', 'hardware', 19.5),
                            (3, 'Editor', 'software', 99.0), (4, 'Compiler', 'software', 149.0),
                            (5, 'Monitor', 'hardware', 229.0);
INSERT INTO orders VALUES (1, 1, 1, 2), (2, 1, 3, 1), (3, 2, 4, 1), (4, 3, 2, 3), (5, 3, 5, 1),
                          (6, 4, 3, 2), (7, 5, 1, 1), (8, 2, 2, 4), (9, 1, 4, 1);
