# Sourced by bench/run: a throwaway MariaDB server in $WORK/maria (mariadb-install-db, mariadbd on
# a free port and a socket), the `bench` database of about $GB GB with the same shape as the
# PostgreSQL one, an option file for the plain tools, and dbkeep's DATABASE_URL.
# Sets MYURL, MYCNF, MYSIZE, MYREF; my_stop stops the server.
MYD=$WORK/maria
mkdir -p "$MYD"
command -v mariadb-install-db >/dev/null || { echo "installing mariadb-server" >&2; apt-get install -y -qq mariadb-server mariadb-client >/dev/null; }
mariadb-install-db --no-defaults --auth-root-authentication-method=normal --skip-test-db --user=root --datadir="$MYD/data" >/dev/null
MYPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/sbin/mariadbd --no-defaults --datadir="$MYD/data" --socket="$MYD/sock" --port="$MYPORT" \
  --bind-address=127.0.0.1 --user=root --skip-name-resolve --pid-file="$MYD/pid" \
  --innodb-buffer-pool-size=1G --innodb-log-file-size=512M --innodb-flush-log-at-trx-commit=2 \
  --max-allowed-packet=256M 2>"$MYD/server.log" &
MYPID=$!
for _ in $(seq 1 600); do mariadb-admin --no-defaults -uroot -S "$MYD/sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
my_stop() { kill "$MYPID" 2>/dev/null; wait "$MYPID" 2>/dev/null || true; }
MYCNF=$MYD/client.cnf
printf '[client]\nuser=root\nsocket=%s\ndefault-character-set=utf8mb4\n' "$MYD/sock" >"$MYCNF"
chmod 600 "$MYCNF"
MYURL="mysql://root@localhost/bench?unix_socket=$MYD/sock"
MY=(mariadb --defaults-extra-file="$MYCNF")
ROWS=$(python3 -c "print(int(float('$GB') * 3100000))")
echo "generating $ROWS rows (~$GB GB) in MariaDB..." >&2
t0=$(date +%s.%N)
"${MY[@]}" <<SQL
CREATE DATABASE bench CHARACTER SET utf8mb4;
USE bench;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100), email VARCHAR(200), country CHAR(2), created DATETIME);
INSERT INTO customers SELECT seq, CONCAT('Customer ', seq), CONCAT('user', seq, '@example.com'),
  ELT(1 + seq % 8, 'DE','FR','US','JP','BR','IN','NG','SE'), '2020-01-01' + INTERVAL seq * 7 MINUTE
FROM seq_1_to_50000;
CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT, amount DECIMAL(12,2), placed DATETIME,
  status VARCHAR(10), note TEXT, payload JSON, KEY (customer_id), KEY (placed),
  FOREIGN KEY (customer_id) REFERENCES customers (id));
INSERT INTO orders SELECT seq, 1 + seq % 50000, ROUND(RAND() * 10000, 2), '2021-01-01' + INTERVAL seq * 3 SECOND,
  ELT(1 + seq % 4, 'new','paid','shipped','returned'),
  CONCAT('order ', seq, ': ', MD5(seq), ' ', REPEAT(CHAR(97 + seq % 26), 10 + seq % 40)),
  JSON_OBJECT('sku', CONCAT('SKU-', seq % 9973), 'qty', 1 + seq % 17, 'tags', JSON_ARRAY(CONCAT('t', seq % 7), CONCAT('u', seq % 11)),
              'ref', MD5(seq * 7), 'gift', seq % 5 = 0)
FROM seq_1_to_$((ROWS / 2));
CREATE TABLE shipments (id BIGINT PRIMARY KEY, order_id BIGINT, carrier VARCHAR(20), sent DATETIME, weight_g INT,
  address TEXT, events JSON, KEY (order_id), KEY (sent));
INSERT INTO shipments SELECT seq, seq, ELT(1 + seq % 4, 'DHL','UPS','La Poste','Yamato'), '2021-01-02' + INTERVAL seq * 3 SECOND,
  100 + seq % 20000, CONCAT(seq % 997, ' Main Street, ', MD5(seq * 3), ', ', REPEAT(CHAR(65 + seq % 26), 5 + seq % 30)),
  JSON_ARRAY(JSON_OBJECT('at', seq, 'what', 'picked'), JSON_OBJECT('at', seq + 3600, 'what', 'in transit', 'hub', CONCAT('H', seq % 101)))
FROM seq_1_to_$((ROWS / 2));
ANALYZE TABLE customers, orders, shipments;
SQL
t1=$(date +%s.%N)
MYSIZE="$("${MY[@]}" -N -e "SELECT CONCAT(ROUND(SUM(DATA_LENGTH + INDEX_LENGTH) / 1048576), ' MB') FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'bench'")"
echo "MariaDB database: $MYSIZE, generated in $(python3 -c "print(round($t1 - $t0, 1))") s" >&2
t0=$(date +%s.%N)
MYBYTES=$(mariadb-dump --defaults-extra-file="$MYCNF" --single-transaction --quick --hex-blob bench | wc -c)
t1=$(date +%s.%N)
MYREF="mariadb-dump | wc -c: $((MYBYTES / 1048576)) MB of SQL in $(python3 -c "print(round($t1 - $t0, 2))") s"
echo "reference: $MYREF" >&2
