//! `strftime_now(format)` for chat templates (Llama 3.2's writes today's date): the current
//! UTC time in the handful of strftime directives templates use.

use minijinja::{Error, ErrorKind};

const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];

pub fn now(format: &str) -> Result<String, Error> {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_time(format, seconds)
}

/// `format` at `seconds` after the Unix epoch (UTC).
pub fn format_time(format: &str, seconds: u64) -> Result<String, Error> {
    let days = (seconds / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = ((seconds % 86_400) / 3600, (seconds % 3600) / 60, seconds % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let directive = chars.next().unwrap_or('%');
        let text = match directive {
            'd' => format!("{day:02}"),
            'm' => format!("{month:02}"),
            'Y' => year.to_string(),
            'y' => format!("{:02}", year % 100),
            'b' => MONTHS[month as usize - 1][..3].to_string(),
            'B' => MONTHS[month as usize - 1].to_string(),
            'a' => DAYS[days.rem_euclid(7) as usize][..3].to_string(),
            'A' => DAYS[days.rem_euclid(7) as usize].to_string(),
            'H' => format!("{hour:02}"),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            '%' => "%".to_string(),
            other => return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: directive %{other} is not supported"))),
        };
        out.push_str(&text);
    }
    Ok(out)
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_dates_as_python() {
        // 2024-07-26 12:34:56 UTC, a Friday: Python's strftime gives these.
        let t = 1_721_997_296;
        assert_eq!(super::format_time("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(super::format_time("%A %B %d, %Y %H:%M:%S %%", t).unwrap(), "Friday July 26, 2024 12:34:56 %");
        assert_eq!(super::format_time("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
        assert!(super::format_time("%Q", t).is_err());
    }
}
