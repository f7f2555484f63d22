# Shared by the benchmarks: build dbkeep (release), start a throwaway PostgreSQL server in $WORK
# (stopped and removed on exit), and generate the `bench` database of about $GB GB.
# Sourced with GB set; sets DBKEEP, WORK, PGBIN, PORT, PSQL, DBSIZE and the PG* variables.

PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 2; }

cargo build --release --quiet
DBKEEP=$PWD/target/release/dbkeep

WORK=$(mktemp -d /tmp/dbkeep-bench.XXXXXX)
RUNAS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; RUNAS=(runuser -u postgres --); fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"${RUNAS[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses='' -c fsync=off -c shared_buffers=256MB -c max_wal_size=4GB -c maintenance_work_mem=256MB" start >/dev/null
export PGHOST=$WORK PGPORT=$PORT PGUSER=postgres
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)

bench_generate() {
# ~250 bytes per row of mixed text, numbers, timestamps and JSON in two large tables with two
# secondary indexes each (3.1 M rows ≈ 1 GB on disk).
ROWS=$(python3 -c "print(int(float('$GB') * 3100000))")
echo "generating $ROWS rows (~$GB GB)..." >&2
t0=$(date +%s.%N)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
"${PSQL[@]}" -d bench <<SQL
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, country text, created timestamptz);
INSERT INTO customers
SELECT g, 'Customer ' || g, 'user' || g || '@example.com',
       (ARRAY['DE','FR','US','JP','BR','IN','NG','SE'])[1 + g % 8],
       '2020-01-01'::timestamptz + g * interval '7 minutes'
FROM generate_series(1, 50000) g;
CREATE TABLE orders (
  id bigint PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(12,2),
  placed timestamptz, status text, note text, payload jsonb);
INSERT INTO orders
SELECT g, 1 + g % 50000, round((random() * 10000)::numeric, 2),
       '2021-01-01'::timestamptz + g * interval '3 seconds',
       (ARRAY['new','paid','shipped','returned'])[1 + g % 4],
       'order ' || g || ': ' || md5(g::text) || ' ' || repeat(chr(97 + g % 26), 10 + g % 40),
       jsonb_build_object('sku', 'SKU-' || (g % 9973), 'qty', 1 + g % 17,
                          'tags', jsonb_build_array('t' || g % 7, 'u' || g % 11),
                          'ref', md5((g * 7)::text), 'gift', g % 5 = 0)
FROM generate_series(1, $ROWS / 2) g;
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON orders (placed);
CREATE TABLE shipments (
  id bigint PRIMARY KEY, order_id bigint, carrier text, sent timestamptz, weight_g int,
  address text, events jsonb);
INSERT INTO shipments
SELECT g, g, (ARRAY['DHL','UPS','La Poste','Yamato'])[1 + g % 4],
       '2021-01-02'::timestamptz + g * interval '3 seconds', 100 + g % 20000,
       (g % 997) || ' Main Street, ' || md5((g * 3)::text) || ', ' || repeat(chr(65 + g % 26), 5 + g % 30),
       jsonb_build_array(jsonb_build_object('at', g, 'what', 'picked'),
                         jsonb_build_object('at', g + 3600, 'what', 'in transit', 'hub', 'H' || g % 101))
FROM generate_series(1, $ROWS / 2) g;
CREATE INDEX ON shipments (order_id);
CREATE INDEX ON shipments (sent);
VACUUM ANALYZE;
SQL
t1=$(date +%s.%N)
DBSIZE=$("${PSQL[@]}" -At -d bench -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "database: $DBSIZE, generated in $(python3 -c "print(round($t1 - $t0, 1))") s" >&2
}
