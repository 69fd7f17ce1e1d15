//! Plain HTTP(S) downloads: what `ADD <url>` fetches. Same TLS settings and
//! the same connect and header timeouts and speed cutoff as the registry
//! traffic (system roots, `--ca-cert`, [`Timeouts`](crate::Timeouts)), no
//! registry protocol.

use std::io::Write;

use reqwest::header::LAST_MODIFIED;

use crate::client::{error_chain, Client};
use crate::error::Error;
use crate::limits::{BodyError, BodyReader, Budget};

/// What a download learned besides the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub size: u64,
    /// The `Last-Modified` header, as seconds since the epoch.
    pub last_modified: Option<i64>,
}

impl Client {
    /// Streams the body of `url` into `out`. Anything but a 2xx answer is an
    /// error naming the URL and the status. Connecting and the response
    /// headers are timed as registry requests are; the body, of any size,
    /// is held to the speed cutoff only.
    pub async fn download(&self, url: &str, out: &mut dyn Write) -> Result<Downloaded, Error> {
        let failed = |detail: String| Error::Download {
            url: url.to_string(),
            detail,
        };
        let stalled = |stall| Error::DownloadStalled {
            url: url.to_string(),
            stall: Box::new(stall),
        };
        let timeouts = &self.config().timeouts;
        let budget = Budget::new(timeouts.total);
        let response = match self.exchange(self.http.get(url), &budget, None).await {
            (Ok(response), _) => response,
            (Err(failure), _) => {
                return Err(match failure.stall(timeouts) {
                    Some(stall) => stalled(stall),
                    None => failed(failure.text(timeouts)),
                })
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("server answered {status}")));
        }
        let last_modified = response
            .headers()
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let mut size = 0u64;
        let total = response.content_length();
        let mut body = BodyReader::new(response, timeouts, None, 0, total);
        loop {
            let chunk = match body.next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(BodyError::Stalled(stall)) => return Err(stalled(stall)),
                Err(BodyError::Failed(err)) => return Err(failed(error_chain(&err))),
            };
            out.write_all(&chunk)
                .map_err(|e| failed(format!("writing the body: {e}")))?;
            size += chunk.len() as u64;
        }
        Ok(Downloaded {
            size,
            last_modified,
        })
    }
}

/// An IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 9110) as seconds
/// since the epoch.
pub fn parse_http_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_http_date;

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        assert_eq!(
            parse_http_date("Sun, 29 Feb 2032 23:59:59 GMT"),
            Some(1_961_711_999)
        );
        assert_eq!(parse_http_date("Wed, 21 Oct 2015 07:28:00 PST"), None);
        assert_eq!(parse_http_date("Wed, 21 Foo 2015 07:28:00 GMT"), None);
        assert_eq!(parse_http_date("Wed, 21 Oct 2015 7:28 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }
}
