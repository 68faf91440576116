//! Storage failures, described with the database's own message and SQLSTATE, and classed as transient (worth
//! retrying: the connection, the server or a conflict) or permanent (the request itself is refused).

use std::fmt;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or lost a query or connection.
    #[error("database error: {}", describe_db(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("database pool error: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database URL or settings are unusable.
    #[error("{0}")]
    Config(String),
    /// A stored value is not what webhookd wrote.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Whether trying the same request again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection, the server or a conflict with other sessions: the same request may succeed later.
    Transient,
    /// The request itself is refused (bad data, a violated constraint, a program limit …): it will fail
    /// again.
    Permanent,
}

impl StoreError {
    /// Whether trying the same request again can succeed.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Db(e) => db_class(e),
            StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => db_class(e),
            StoreError::Pool(_) => ErrorClass::Transient,
            StoreError::Migration(_) | StoreError::Config(_) | StoreError::Corrupt(_) => {
                ErrorClass::Permanent
            }
        }
    }

    /// Whether a lock was not granted within `lock_timeout` (SQLSTATE 55P03, `lock_not_available`): another
    /// transaction holds it.
    pub fn is_lock_not_available(&self) -> bool {
        self.sqlstate() == Some("55P03")
    }

    /// The SQLSTATE the database answered with, if it answered.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Db(e) | StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => {
                e.code().map(|c| c.code())
            }
            _ => None,
        }
    }
}

fn db_class(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        Some(code) => sqlstate_class(code.code()),
        // No answer from the server: the connection is lost or could not be made, unless the client itself
        // could not encode or decode a value, which the same request would hit again.
        None => {
            let text = e.to_string();
            if text.starts_with("error serializing") || text.starts_with("error deserializing") {
                ErrorClass::Permanent
            } else {
                ErrorClass::Transient
            }
        }
    }
}

/// The class of a SQLSTATE: connection exceptions (08), transaction rollbacks such as serialization failures
/// and deadlocks (40), insufficient resources (53), operator intervention such as an admin shutdown or a
/// cancelled statement (57), a lock that could not be had (55P03), and a write refused because the server
/// only reads (25006: a standby, which is where a connection lands during a failover until its server is
/// promoted or the address moves to the new primary) are transient; anything else (data exceptions,
/// integrity violations, program limits, syntax …) is permanent.
pub fn sqlstate_class(code: &str) -> ErrorClass {
    let transient = code.starts_with("08")
        || code.starts_with("40")
        || code.starts_with("53")
        || code.starts_with("57")
        || code == "55P03"
        || code == "55006"
        || code == "25006";
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// The database's own message with its SQLSTATE (and the constraint, table or column it names), or the
/// client's error with its cause.
fn describe_db(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            for (what, name) in [
                ("constraint", db.constraint()),
                ("table", db.table()),
                ("column", db.column()),
            ] {
                if let Some(name) = name {
                    text.push_str(&format!(", {what} {name}"));
                }
            }
            text
        }
        None => with_causes(e),
    }
}

fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe_db(e),
        other => other.to_string(),
    }
}

/// `e` and each of its sources, joined with ": ", leaving out a source whose text is already there (many
/// errors print their source in their own message too).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_conflict_resource_shutdown_and_read_only_errors_are_transient() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "53100", "57P01", "57P03", "57014",
            "55P03", "25006",
        ] {
            assert_eq!(sqlstate_class(code), ErrorClass::Transient, "{code}");
        }
    }

    #[test]
    fn data_integrity_and_limit_errors_are_permanent() {
        // invalid byte sequence, check violation, unique violation, value too long, program limit, syntax.
        for code in [
            "22021", "23514", "23505", "22001", "54000", "42601", "XX000",
        ] {
            assert_eq!(sqlstate_class(code), ErrorClass::Permanent, "{code}");
        }
    }

    #[test]
    fn non_database_errors_are_permanent_except_the_pool() {
        assert_eq!(
            StoreError::Config("x".into()).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            StoreError::Pool(deadpool_postgres::PoolError::Closed).class(),
            ErrorClass::Transient
        );
    }
}
