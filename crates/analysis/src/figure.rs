//! Figures with plotters, each written as SVG and PNG. Text uses the bundled DejaVu Sans
//! (through ab_glyph), so rendering needs no system font; legends sit beside the plot so
//! they never cover data; every range is taken from the data.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::comparison::{across_complexity, forms_only};
use crate::stats::LEVEL;
use crate::summary::{Config, Point, Stat};
use crate::{Error, Result};

/// DejaVu Sans (licence in `assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = cardinal_font::DEJAVU_SANS;
const FAMILY: &str = "sans-serif";

/// Pixel size of every figure.
pub const SIZE: (u32, u32) = (960, 540);
const LEGEND_WIDTH: u32 = 270;

/// The Okabe-Ito palette without its yellow: distinguishable with colour-blindness and in
/// greyscale print.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are compiled in and known to parse (tested), so a failure is a bug.
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the bundled DejaVu Sans does not parse"));
    });
}

/// A figure written to disk: its file stem (`curves` for curves.svg and curves.png) and
/// what it shows.
#[derive(Debug, Clone)]
pub struct Figure {
    pub stem: String,
    pub title: String,
    pub caption: String,
}

impl Figure {
    pub fn svg(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.svg", self.stem))
    }
    pub fn png(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.png", self.stem))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Marker {
    Circle,
    Triangle,
    None,
}

/// One line of a chart: (x, mean, half-width of the 95% interval) points.
#[derive(Debug, Clone)]
struct Series {
    color: RGBColor,
    dashed: bool,
    marker: Marker,
    /// Draw the points with vertical error bars instead of a band and a line.
    error_bars: bool,
    /// With error bars, also join the points with a line (a family across complexity).
    joined: bool,
    /// Markers only at whole x (the epochs' ends), so that curves with evaluations within
    /// epochs stay readable.
    markers_at_whole_x: bool,
    points: Vec<(f64, f64, Option<f64>)>,
}

#[derive(Debug, Clone)]
struct Panel {
    title: String,
    x_desc: String,
    y_desc: String,
    /// x values are log2 of the label shown (cardinality).
    log2_x: bool,
    /// The quantity cannot be negative (a gap): the axis starts at 0 or above.
    non_negative: bool,
    /// The values are rates in percent (errors): intervals, which a t interval over few
    /// seeds can stretch past them, and the axis are clipped to 0-100.
    percent: bool,
    series: Vec<Series>,
}

/// How a legend note is drawn: a line-style key, or plain text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Note {
    Solid,
    Dashed,
    Text,
}

/// What the legend says: one entry per colour, plus notes (line styles, remarks).
#[derive(Debug, Clone)]
struct Legend {
    entries: Vec<(String, RGBColor, Marker)>,
    notes: Vec<(String, Note)>,
}

struct Chart {
    panels: Vec<Panel>,
    legend: Legend,
}

type Drawn = std::result::Result<(), String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn range(values: impl Iterator<Item = f64>, pad: f64, min_span: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(min_span);
    let mid = (hi + lo) / 2.0;
    (mid - span / 2.0 - span * pad, mid + span / 2.0 + span * pad)
}

/// Enough decimals to tell ticks apart over a span.
fn decimals_for(span: f64) -> usize {
    if span >= 10.0 {
        0
    } else if span >= 1.0 {
        1
    } else if span >= 0.1 {
        2
    } else {
        ((-span.log10()).ceil() as usize + 1).min(8)
    }
}

impl Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        root.fill(&WHITE).map_err(text)?;
        let (width, _) = root.dim_in_pixel();
        let (plots, legend) = root.split_horizontally(width.saturating_sub(LEGEND_WIDTH));
        let areas = plots.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            panel.draw(area)?;
        }
        self.legend.draw(&legend)
    }
}

impl Panel {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        let xs = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
        };
        let integer_x = xs().all(|x| x.fract() == 0.0);
        // Epochs and log2(C) are steps of 1; MACs and params are compared relative to
        // their size, so a 5% spread fills a tenth of the axis or more.
        let magnitude = xs().map(f64::abs).fold(0.0, f64::max);
        let min_span = if integer_x {
            1.0
        } else {
            (0.1 * magnitude).max(1e-9)
        };
        let (x0, x1) = range(xs(), 0.04, min_span);
        let percent = self.percent;
        let clip = move |y: f64| if percent { y.clamp(0.0, 100.0) } else { y };
        let ys = || {
            self.series.iter().flat_map(|s| {
                s.points.iter().flat_map(|&(_, m, sd)| {
                    let sd = sd.unwrap_or(0.0);
                    [clip(m - sd), clip(m + sd)]
                })
            })
        };
        let y_magnitude = ys()
            .filter(|y| y.is_finite())
            .map(f64::abs)
            .fold(0.0, f64::max);
        let (mut y0, y1) = range(ys(), 0.08, (0.02 * y_magnitude).max(1e-9));
        if self.non_negative {
            y0 = y0.max(0.0);
        }
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, (FAMILY, 18))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(text)?;
        let log2_x = self.log2_x;
        let x_span = x1 - x0;
        let x_format = move |x: &f64| -> String {
            if log2_x {
                if (x - x.round()).abs() < 1e-9 {
                    format!("{}", 2f64.powi(x.round() as i32))
                } else {
                    String::new()
                }
            } else if integer_x {
                if (x - x.round()).abs() < 1e-9 {
                    format!("{}", x.round())
                } else {
                    String::new()
                }
            } else {
                format!("{x:.decimals$}", decimals = decimals_for(x_span))
            }
        };
        let y_span = y1 - y0;
        let y_format = move |y: &f64| format!("{y:.decimals$}", decimals = decimals_for(y_span));
        chart
            .configure_mesh()
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .axis_desc_style((FAMILY, 15))
            .label_style((FAMILY, 13))
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .x_labels(if integer_x { 12 } else { 5 })
            .y_labels(8)
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(text)?;
        for s in &self.series {
            let means: Vec<(f64, f64)> = s.points.iter().map(|&(x, m, _)| (x, m)).collect();
            if s.error_bars && s.joined {
                chart
                    .draw_series(LineSeries::new(means.clone(), s.color.stroke_width(2)))
                    .map_err(text)?;
            }
            if s.error_bars {
                chart
                    .draw_series(s.points.iter().filter_map(|&(x, m, sd)| {
                        sd.map(|sd| {
                            ErrorBar::new_vertical(
                                x,
                                clip(m - sd),
                                m,
                                clip(m + sd),
                                s.color.stroke_width(2),
                                12,
                            )
                        })
                    }))
                    .map_err(text)?;
            } else {
                let band: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter_map(|&(x, m, sd)| sd.map(|sd| (x, clip(m + sd))))
                    .chain(
                        s.points
                            .iter()
                            .rev()
                            .filter_map(|&(x, m, sd)| sd.map(|sd| (x, clip(m - sd)))),
                    )
                    .collect();
                if band.len() >= 4 {
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            band,
                            s.color.mix(0.15).filled(),
                        )))
                        .map_err(text)?;
                }
                if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(
                            means.clone(),
                            7,
                            5,
                            s.color.stroke_width(2),
                        ))
                        .map_err(text)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(means.clone(), s.color.stroke_width(2)))
                        .map_err(text)?;
                }
            }
            let marked: Vec<(f64, f64)> = means
                .iter()
                .copied()
                .filter(|(x, _)| !s.markers_at_whole_x || x.fract() == 0.0)
                .collect();
            match s.marker {
                Marker::Circle => chart
                    .draw_series(marked.iter().map(|&p| Circle::new(p, 4, s.color.filled())))
                    .map(|_| ())
                    .map_err(text)?,
                Marker::Triangle => chart
                    .draw_series(
                        marked
                            .iter()
                            .map(|&p| TriangleMarker::new(p, 6, s.color.filled())),
                    )
                    .map(|_| ())
                    .map_err(text)?,
                Marker::None => {}
            }
        }
        Ok(())
    }
}

impl Legend {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        let font = (FAMILY, 14).into_font().color(&BLACK);
        let mut y = 60;
        for (label, color, marker) in &self.entries {
            area.draw(&PathElement::new(
                vec![(8, y), (40, y)],
                color.stroke_width(3),
            ))
            .map_err(text)?;
            match marker {
                Marker::Circle => area.draw(&Circle::new((24, y), 4, color.filled())),
                Marker::Triangle => area.draw(&TriangleMarker::new((24, y), 6, color.filled())),
                Marker::None => Ok(()),
            }
            .map_err(text)?;
            area.draw(&Text::new(label.clone(), (48, y - 8), font.clone()))
                .map_err(text)?;
            y += 24;
        }
        y += 10;
        for (note, style) in &self.notes {
            let grey = RGBColor(90, 90, 90);
            let x_text = match style {
                Note::Dashed => {
                    for x in [8, 22, 36] {
                        area.draw(&PathElement::new(
                            vec![(x, y), (x + 8, y)],
                            grey.stroke_width(2),
                        ))
                        .map_err(text)?;
                    }
                    52
                }
                Note::Solid => {
                    area.draw(&PathElement::new(
                        vec![(8, y), (44, y)],
                        grey.stroke_width(2),
                    ))
                    .map_err(text)?;
                    52
                }
                Note::Text => 8,
            };
            area.draw(&Text::new(note.clone(), (x_text, y - 8), font.clone()))
                .map_err(text)?;
            y += 22;
        }
        Ok(())
    }
}

/// Writes `stem.svg` and `stem.png` into `dir`, each rendered in memory first and then
/// written atomically: a report killed mid-way never links to an empty or partial figure.
fn save(chart: &Chart, dir: &Path, stem: &str) -> Result<()> {
    register_font();
    let (w, h) = SIZE;
    let svg = dir.join(format!("{stem}.svg"));
    let failed = |path: &Path, message: String| Error::Figure {
        path: path.to_path_buf(),
        message,
    };
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, SIZE).into_drawing_area();
        chart.draw(&root).map_err(|m| failed(&svg, m))?;
        root.present().map_err(|e| failed(&svg, e.to_string()))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        chart.draw(&root).map_err(|m| failed(&png, m))?;
        root.present().map_err(|e| failed(&png, e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| failed(&png, "pixel buffer of the wrong size".into()))?;
    let mut png_bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png_bytes, image::ImageFormat::Png)
        .map_err(|e| failed(&png, e.to_string()))?;
    cardinal_results::write_atomic(&svg, svg_text.as_bytes())?;
    cardinal_results::write_atomic(&png, png_bytes.get_ref())?;
    Ok(())
}

/// The half-width of the 95% t interval of a mean over seeds; none for one seed.
fn ci(stat: &Stat) -> Option<f64> {
    stat.half_width(LEVEL).filter(|v| v.is_finite())
}

/// Finite points only: a NaN (a diverged epoch) would draw to the edge of the plot.
fn points(curve: &[Point]) -> Vec<(f64, f64, Option<f64>)> {
    curve
        .iter()
        .filter(|(_, s)| s.mean.is_finite())
        .map(|(x, s)| (*x, s.mean, ci(s)))
        .collect()
}

fn marker(config: &Config) -> Marker {
    if config.cardinality == 1 {
        Marker::Circle
    } else {
        Marker::Triangle
    }
}

fn entries(configs: &[Config]) -> Vec<(String, RGBColor, Marker)> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.label.clone(), color(i), marker(c)))
        .collect()
}

fn seeds_note(configs: &[Config]) -> String {
    if configs.iter().all(|c| c.seeds() == 1) {
        "one seed: no interval".into()
    } else {
        "band / bars: 95% CI of the mean".into()
    }
}

/// What the bars of a final-error figure show, for its caption.
fn bars_text(configs: &[Config]) -> &'static str {
    if configs.iter().all(|c| c.seeds() > 1) {
        "mean over seeds with bars of the 95% confidence interval of the mean, from Student's t"
    } else if configs.iter().any(|c| c.seeds() > 1) {
        "mean over seeds with bars of the 95% confidence interval of the mean, from Student's t, where there are several seeds"
    } else {
        "single runs, no error bars"
    }
}

/// Every figure the data supports, written into `dir`.
pub fn all(configs: &[Config], dir: &Path) -> Result<Vec<Figure>> {
    let mut figures = vec![curves(configs, dir)?];
    let mut cardinalities: Vec<usize> = configs.iter().map(|c| c.cardinality).collect();
    cardinalities.sort_unstable();
    cardinalities.dedup();
    if forms_only(configs) {
        figures.push(epoch_time(configs, dir)?);
        figures.push(form_difference(configs, dir)?);
    } else if across_complexity(configs) {
        // One line per family reads the question off one picture; the cardinality plot
        // would stack the levels' points on the same few x.
        figures.push(error_vs_macs_by_family(configs, dir)?);
        figures.push(error_vs_complexity(configs, dir)?);
    } else {
        if cardinalities.len() > 1 && cardinalities.iter().all(|&c| c > 0) {
            figures.push(error_vs_cardinality(configs, dir)?);
        }
        if configs.len() > 1 {
            figures.push(error_vs_complexity(configs, dir)?);
        }
    }
    Ok(figures)
}

/// Train and test top-1 error against epochs of training (the test curve with its
/// evaluations within epochs): the analogue of the paper's Fig. 5.
pub fn curves(configs: &[Config], dir: &Path) -> Result<Figure> {
    let mut series = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        for (curve, dashed) in [(&c.curves.train_top1, true), (&c.curves.test_top1, false)] {
            series.push(Series {
                color: color(i),
                dashed,
                marker: if dashed { Marker::None } else { marker(c) },
                error_bars: false,
                joined: false,
                markers_at_whole_x: true,
                points: points(curve),
            });
        }
    }
    let within_epochs = configs
        .iter()
        .any(|c| c.curves.test_top1.iter().any(|(x, _)| x.fract() != 0.0));
    let chart = Chart {
        panels: vec![Panel {
            title: "Top-1 error during training".into(),
            x_desc: "epochs of training".into(),
            y_desc: "top-1 error (%)".into(),
            log2_x: false,
            non_negative: false,
            percent: true,
            series,
        }],
        legend: Legend {
            entries: entries(configs),
            notes: vec![
                ("test".into(), Note::Solid),
                ("train (augmented)".into(), Note::Dashed),
                (seeds_note(configs), Note::Text),
            ],
        },
    };
    save(&chart, dir, "curves")?;
    Ok(Figure {
        stem: "curves".into(),
        title: "Training curves".into(),
        caption: format!(
            "Top-1 error against epochs of training, train (dashed, on augmented images, as the epoch trained) and test (solid{}); {}. The analogue of the paper's Fig. 5.",
            if within_epochs {
                ", evaluated several times per epoch; markers at the epochs' ends"
            } else {
                ", at the end of each epoch"
            },
            if configs.iter().any(|c| c.seeds() > 1) {
                "mean over seeds with a shaded band of the 95% confidence interval of the mean (Student's t, over the seeds at each point, clipped to 0-100%)"
            } else {
                "one seed each, so no band"
            }
        ),
    })
}

/// Final test error against cardinality with 95% confidence bars: Table 3 as a plot.
pub fn error_vs_cardinality(configs: &[Config], dir: &Path) -> Result<Figure> {
    let mut sorted: Vec<(usize, &Config)> = configs.iter().enumerate().collect();
    sorted.sort_by_key(|(_, c)| c.cardinality);
    // Points with error bars, not joined: a line through single runs reads as a trend.
    let mut series = Vec::new();
    for (i, c) in &sorted {
        series.push(Series {
            color: color(*i),
            dashed: false,
            marker: marker(c),
            error_bars: true,
            joined: false,
            markers_at_whole_x: false,
            points: vec![(
                (c.cardinality as f64).log2(),
                c.final_test_top1.mean,
                ci(&c.final_test_top1),
            )],
        });
    }
    let chart = Chart {
        panels: vec![Panel {
            title: "Final test error against cardinality".into(),
            x_desc: "cardinality C (log scale)".into(),
            y_desc: "final top-1 test error (%)".into(),
            log2_x: true,
            non_negative: false,
            percent: true,
            series,
        }],
        legend: Legend {
            entries: entries(configs),
            notes: vec![(seeds_note(configs), Note::Text)],
        },
    };
    save(&chart, dir, "error-vs-cardinality")?;
    Ok(Figure {
        stem: "error-vs-cardinality".into(),
        title: "Error against cardinality".into(),
        caption: format!(
            "Final top-1 test error against cardinality C, {} ({}): the paper's Table 3 as a plot.",
            complexity_spread(configs),
            bars_text(configs)
        ),
    })
}

/// "params within 7.8% and MACs within 4.8% of each other": what "preserved complexity"
/// means for this grid, measured rather than assumed.
pub fn complexity_spread(configs: &[Config]) -> String {
    let spread = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lo > 0.0 {
            (hi / lo - 1.0) * 100.0
        } else {
            f64::NAN
        }
    };
    format!(
        "params within {:.1}% and MACs within {:.1}% of each other",
        spread(configs.iter().map(|c| c.params as f64).collect()),
        spread(configs.iter().map(|c| c.macs as f64).collect())
    )
}

/// Final test error against multiply-adds and against parameters; ResNet (C = 1) as
/// circles, ResNeXt as triangles: the equal-FLOPs comparison.
pub fn error_vs_complexity(configs: &[Config], dir: &Path) -> Result<Figure> {
    let panel = |title: &str, x_desc: &str, x: &dyn Fn(&Config) -> f64| Panel {
        title: title.into(),
        x_desc: x_desc.into(),
        y_desc: "final top-1 test error (%)".into(),
        log2_x: false,
        non_negative: false,
        percent: true,
        series: configs
            .iter()
            .enumerate()
            .map(|(i, c)| Series {
                color: color(i),
                dashed: false,
                marker: marker(c),
                error_bars: true,
                joined: false,
                markers_at_whole_x: false,
                points: vec![(x(c), c.final_test_top1.mean, ci(&c.final_test_top1))],
            })
            .collect(),
    };
    let chart = Chart {
        panels: vec![
            panel("Error against multiply-adds", "MACs (millions)", &|c| {
                c.macs as f64 / 1e6
            }),
            panel("Error against parameters", "params (millions)", &|c| {
                c.params as f64 / 1e6
            }),
        ],
        legend: Legend {
            entries: entries(configs),
            notes: vec![
                ("circle: ResNet (C = 1)".into(), Note::Text),
                ("triangle: ResNeXt".into(), Note::Text),
                (seeds_note(configs), Note::Text),
            ],
        },
    };
    save(&chart, dir, "error-vs-complexity")?;
    Ok(Figure {
        stem: "error-vs-complexity".into(),
        title: "Error against complexity".into(),
        caption: format!(
            "Final top-1 test error against multiply-adds (left) and parameters (right), ResNet (C = 1) as circles and ResNeXt as triangles, {}: at equal complexity, lower is better.",
            bars_text(configs)
        ),
    })
}

/// The family name of a cardinality: ResNet for C = 1.
fn family(cardinality: usize) -> String {
    if cardinality == 1 {
        "ResNet (C = 1)".into()
    } else {
        format!("ResNeXt (C = {cardinality})")
    }
}

/// Final test error against multiply-adds, one line per cardinality (ResNet and ResNeXt)
/// through the complexity levels, with 95% confidence bars: "at equal FLOPs, is ResNeXt
/// better?" read off one picture.
pub fn error_vs_macs_by_family(configs: &[Config], dir: &Path) -> Result<Figure> {
    let mut cardinalities: Vec<usize> = configs.iter().map(|c| c.cardinality).collect();
    cardinalities.sort_unstable();
    cardinalities.dedup();
    let mut series = Vec::new();
    let mut legend = Vec::new();
    for (i, &cardinality) in cardinalities.iter().enumerate() {
        let mut members: Vec<&Config> = configs
            .iter()
            .filter(|c| c.cardinality == cardinality)
            .collect();
        members.sort_by_key(|c| c.macs);
        let marker = if cardinality == 1 {
            Marker::Circle
        } else {
            Marker::Triangle
        };
        series.push(Series {
            color: color(i),
            dashed: false,
            marker,
            error_bars: true,
            joined: true,
            markers_at_whole_x: false,
            points: members
                .iter()
                .map(|c| {
                    (
                        c.macs as f64 / 1e6,
                        c.final_test_top1.mean,
                        ci(&c.final_test_top1),
                    )
                })
                .collect(),
        });
        legend.push((family(cardinality), color(i), marker));
    }
    let chart = Chart {
        panels: vec![Panel {
            title: "Final test error against multiply-adds, by family".into(),
            x_desc: "MACs (millions)".into(),
            y_desc: "final top-1 test error (%)".into(),
            log2_x: false,
            non_negative: false,
            percent: true,
            series,
        }],
        legend: Legend {
            entries: legend,
            notes: vec![(seeds_note(configs), Note::Text)],
        },
    };
    let stem = "error-vs-macs-by-family";
    save(&chart, dir, stem)?;
    Ok(Figure {
        stem: stem.into(),
        title: "ResNet against ResNeXt across complexity".into(),
        caption: format!(
            "Final top-1 test error against multiply-adds, one line per family through {} complexity levels ({}): where the ResNeXt line lies below the ResNet line at the same MACs, ResNeXt is better at equal FLOPs. The paper's Fig. 5 question, across complexity.",
            crate::comparison::complexity_levels(configs).len(),
            bars_text(configs)
        ),
    })
}

/// Seconds per epoch of each configuration: what the block forms cost.
pub fn epoch_time(configs: &[Config], dir: &Path) -> Result<Figure> {
    let series = configs
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            color: color(i),
            dashed: false,
            marker: marker(c),
            error_bars: false,
            joined: false,
            markers_at_whole_x: false,
            points: points(&c.curves.epoch_seconds),
        })
        .collect();
    let chart = Chart {
        panels: vec![Panel {
            title: "Wall time per epoch".into(),
            x_desc: "epoch".into(),
            y_desc: "seconds per epoch (s)".into(),
            log2_x: false,
            non_negative: false,
            percent: false,
            series,
        }],
        legend: Legend {
            entries: entries(configs),
            notes: vec![("training and evaluation".into(), Note::Text)],
        },
    };
    save(&chart, dir, "epoch-time")?;
    Ok(Figure {
        stem: "epoch-time".into(),
        title: "Time per epoch".into(),
        caption: "Wall-clock seconds per epoch (training and evaluation) of each form, on the machine named in the setup.".into(),
    })
}

/// How far each form's curves drift from the first form's during training.
pub fn form_difference(configs: &[Config], dir: &Path) -> Result<Figure> {
    let reference = &configs[0];
    let gap = |a: &[Point], b: &[Point]| -> Vec<(f64, f64, Option<f64>)> {
        a.iter()
            .filter_map(|(x, sa)| {
                let (_, sb) = b.iter().find(|(e, _)| e == x)?;
                Some((*x, (sb.mean - sa.mean).abs(), None))
            })
            .collect()
    };
    let panel = |title: &str, y_desc: &str, curve: &dyn Fn(&Config) -> &Vec<Point>| Panel {
        title: title.into(),
        x_desc: "epochs of training".into(),
        y_desc: y_desc.into(),
        log2_x: false,
        non_negative: true,
        percent: false,
        series: configs
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, c)| Series {
                color: color(i),
                dashed: false,
                marker: Marker::Circle,
                error_bars: false,
                joined: false,
                markers_at_whole_x: false,
                points: gap(curve(reference), curve(c)),
            })
            .collect(),
    };
    let chart = Chart {
        panels: vec![
            panel(
                "Test error gap",
                "|test top-1 error difference| (points)",
                &|c| &c.curves.test_top1,
            ),
            panel(
                "Training loss gap",
                "|train loss difference| (nats)",
                &|c| &c.curves.train_loss,
            ),
        ],
        legend: Legend {
            entries: configs
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, c)| {
                    (
                        format!("{} - {}", c.label, reference.label),
                        color(i),
                        Marker::Circle,
                    )
                })
                .collect(),
            notes: vec![("absolute gaps of the means".into(), Note::Text)],
        },
    };
    save(&chart, dir, "form-difference")?;
    Ok(Figure {
        stem: "form-difference".into(),
        title: "Gap between the forms".into(),
        caption: format!(
            "Absolute difference of each form's test top-1 error (left) and training loss (right) from {}'s, at each test evaluation. The forms start from converted weights, as one function; any gap grows from floating-point rounding.",
            reference.label
        ),
    })
}
