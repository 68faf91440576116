//! For the crate's tests: a private database (and RabbitMQ names) per test, removed when dropped.

use webhookd_store::{database, migrate, Pool};

pub(crate) const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A migrated database of the test's own.
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) pool: Pool,
}

impl TestDb {
    pub(crate) async fn new() -> Self {
        let name = format!(
            "whunit_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let url = format!("{PG_BASE}/{name}");
        migrate::migrate(&url)
            .await
            .expect("migrate a test database");
        let pool = database::pool(&url, 4).expect("pool");
        Self { url, pool }
    }

    /// Runs SQL statements.
    pub(crate) async fn execute(&self, sql: &str) {
        self.pool
            .get()
            .await
            .unwrap()
            .batch_execute(sql)
            .await
            .unwrap();
    }

    /// The first column of the first row of `sql`.
    pub(crate) async fn count(&self, sql: &str) -> i64 {
        self.pool
            .get()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(database::drop_database(&url));
            }
        })
        .join();
    }
}

/// A trigger that refuses, with SQLSTATE `sqlstate`, every row of `table` for which `condition` (over `NEW`)
/// holds: a row the database refuses for good, put in a batch by the test.
pub(crate) fn refusing_trigger(table: &str, condition: &str, sqlstate: &str) -> String {
    format!(
        "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF {condition} THEN
                 RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}
             FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
    )
}
