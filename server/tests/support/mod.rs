//! Test support shared by the server's integration tests: a PostgreSQL
//! database of the test's own, created empty and dropped at the end.

#![allow(dead_code)]

use sqlx::{Connection, Executor, PgConnection};
use vow_server::engine::task::TaskId;

/// The server the tests use, without a database name; override with
/// `VOW_TEST_POSTGRES` (for example `postgres://postgres@127.0.0.1:5432`).
pub fn postgres_server() -> String {
    std::env::var("VOW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database with a random name, dropped (with its connections) on drop,
/// so concurrent test runs never share data.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

async fn admin_connection() -> PgConnection {
    let admin_url = format!("{}/postgres", postgres_server());
    PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} ({error}); these tests need it running \
             (set VOW_TEST_POSTGRES to use another server)"
            )
        })
}

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("vow_test_{}", TaskId::generate());
        let mut admin = admin_connection().await;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        let url = format!("{}/{name}", postgres_server());
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: drop the database from a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                let mut admin = admin_connection().await;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .map(drop)
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop the test database {}: {error}", self.name);
        }
    }
}
