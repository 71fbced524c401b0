//! `carbridge-inspect`'s text for a person: one line per fact, the
//! label in a column, what is wrong in capitals.

use serde_json::Value;

use super::Cli;

/// `ms` since the epoch as UTC, `2026-12-07 03:01:02.123 UTC`.
pub(super) fn utc(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian
    // calendar, counted in 400-year eras from 0000-03-01).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03} UTC")
}

/// `ms` since the epoch, and how long ago: `... UTC (3 min 2 s ago)`.
fn when(ms: i64) -> String {
    let ago = (contract::now_ms() - ms).max(0) / 1000;
    let ago = match ago {
        0..60 => format!("{ago} s"),
        60..3600 => format!("{} min {} s", ago / 60, ago % 60),
        _ => format!("{} h {} min", ago / 3600, ago / 60 % 60),
    };
    format!("{} ({ago} ago)", utc(ms))
}

/// A field of the gateway's answer as text (`-` when absent).
fn field(value: &Value, name: &str) -> String {
    match value.get(name) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// A close as one line.
fn close_line(close: &Value) -> String {
    if close.is_null() {
        return "none remembered".to_owned();
    }
    let detail = close
        .get("detail")
        .and_then(Value::as_str)
        .map_or(String::new(), |detail| format!(" ({detail})"));
    let at = close
        .get("at_ms")
        .and_then(Value::as_i64)
        .map_or("-".to_owned(), when);
    format!(
        "{}{detail} at {at}, shard {}",
        field(close, "reason"),
        field(close, "shard")
    )
}

fn print_session(record: Option<&Value>) {
    let Some(record) = record.filter(|record| !record.is_null()) else {
        println!("session      none: the car never connected (no record in the registry)");
        return;
    };
    println!(
        "registry     {} partition {} offset {}, written {}",
        field(record, "topic"),
        field(record, "partition"),
        field(record, "offset"),
        record
            .get("written_ms")
            .and_then(Value::as_i64)
            .map_or("-".to_owned(), when)
    );
    if record.get("slot").is_none() {
        println!("session      unreadable record: {record}");
        return;
    }
    let live = match record.get("ended").and_then(Value::as_str) {
        None => "LIVE".to_owned(),
        Some(why) => format!("ended ({why}): the car is not connected"),
    };
    println!("session      {} {live}", field(record, "session"));
    if let Some(since) = record.get("since_ms").and_then(Value::as_i64) {
        println!("since        {}", when(since));
    }
    let filters: Vec<&str> = record
        .get("filters")
        .and_then(Value::as_array)
        .map(|filters| filters.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "filters      {}",
        if filters.is_empty() {
            "none: the car gets no downlink".to_owned()
        } else {
            filters.join(", ")
        }
    );
}

fn print_gateway(gateway: &Value) {
    println!(
        "slot         {} = gateway instance {}, shard {} (admin {})",
        field(gateway, "slot"),
        field(gateway, "instance"),
        field(gateway, "shard"),
        field(gateway, "admin")
    );
    if let Some(error) = gateway.get("error").and_then(Value::as_str) {
        println!("gateway      NOT ASKED OR NO ANSWER: {error}");
        return;
    }
    let answer = gateway.get("answer").unwrap_or(&Value::Null);
    if answer.get("connected") != Some(&Value::Bool(true)) {
        println!("gateway      not connected there");
        println!(
            "last close   {}",
            close_line(answer.get("previous_close").unwrap_or(&Value::Null))
        );
        return;
    }
    let parked = if answer.get("parked") == Some(&Value::Bool(true)) {
        ", parked (quiet)"
    } else {
        ""
    };
    println!(
        "gateway      CONNECTED on shard {}{parked}, session {}",
        field(answer, "shard"),
        field(answer, "session")
    );
    println!("address      {}", field(answer, "address"));
    let identity = match answer.get("tls_identity").and_then(Value::as_str) {
        Some(identity) => format!("{identity} (proven by its certificate or a trusted proxy)"),
        None => "none proven (no client certificate)".to_owned(),
    };
    println!("identity     {identity}");
    let ms = |name: &str| {
        answer
            .get(name)
            .and_then(Value::as_i64)
            .map_or("-".to_owned(), when)
    };
    println!("connected    {}", ms("connected_at_ms"));
    println!(
        "last packet  {} (keep-alive {} s)",
        ms("last_packet_at_ms"),
        field(answer, "keep_alive_secs")
    );
    println!(
        "uplink       {} messages, {} bytes",
        field(answer, "uplink_messages"),
        field(answer, "uplink_bytes")
    );
    let queued = answer.get("downlink_queued").unwrap_or(&Value::Null);
    println!(
        "downlink     {} messages, {} bytes written; {} queued ({} bytes)",
        field(answer, "downlink_messages"),
        field(answer, "downlink_bytes"),
        field(queued, "messages"),
        field(queued, "bytes")
    );
    println!(
        "last close   {}",
        close_line(answer.get("previous_close").unwrap_or(&Value::Null))
    );
}

fn print_receipts(report: &Value, cli: &Cli) {
    if let Some(error) = report.get("receipts_error").and_then(Value::as_str) {
        println!("receipts     UNREADABLE: {error}");
        return;
    }
    let receipts = report
        .get("receipts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if receipts.is_empty() {
        println!("receipts     none in the last {} s", cli.since_secs);
    }
    for receipt in receipts {
        let by = match (
            receipt.get("by").and_then(Value::as_str),
            receipt.get("slot"),
        ) {
            (Some("gateway"), Some(slot)) => format!("gateway slot {slot}"),
            (by, _) => by.unwrap_or("-").to_owned(),
        };
        let request = receipt.get("request").unwrap_or(&Value::Null);
        println!(
            "receipt      {}  {:<9}{} by {by}, request partition {} offset {}, id {}",
            receipt
                .get("at_ms")
                .and_then(Value::as_i64)
                .map_or("-".to_owned(), utc),
            field(&receipt, "outcome"),
            if receipt.get("final") == Some(&Value::Bool(false)) {
                " (not final)"
            } else {
                ""
            },
            field(request, "partition"),
            field(request, "offset"),
            field(&receipt, "correlation_id"),
        );
    }
}

pub(super) fn print_human(report: &Value, cli: &Cli) {
    println!("car          {}", cli.client);
    print_session(report.get("session"));
    if let Some(gateway) = report.get("gateway").filter(|gateway| !gateway.is_null()) {
        print_gateway(gateway);
    }
    print_receipts(report, cli);
    print_held(report.get("held_requests"));
}

/// The requests the routers hold for the car.
fn print_held(held: Option<&Value>) {
    if held.and_then(|held| held.get("available")) != Some(&Value::Bool(true)) {
        println!("held         not asked (give --router-admin to see what the routers hold)");
        return;
    }
    let requests = held
        .and_then(|held| held.get("requests"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if requests.is_empty() {
        println!("held         none");
        return;
    }
    println!("held         {} request(s), oldest first", requests.len());
    for request in requests {
        if let Some(error) = request.get("error").and_then(Value::as_str) {
            let router = request.get("router").and_then(Value::as_str).unwrap_or("?");
            println!("  router {router}: {error}");
            continue;
        }
        let field = |name: &str| request.get(name).cloned().unwrap_or(Value::Null);
        let expires = request
            .get("expires_ms")
            .and_then(Value::as_i64)
            .map_or_else(|| "?".to_owned(), utc);
        println!(
            "  {}:{} {} ({} bytes) until {expires}, correlation id {}",
            field("partition"),
            field("offset"),
            request.get("topic").and_then(Value::as_str).unwrap_or("?"),
            field("payload_bytes"),
            field("correlation_id"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(utc(1_796_040_005_123), "2026-11-30 12:00:05.123 UTC");
    }
}
