//! The analysis' files: [`write_outputs`] and [`read_embeddings`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, Float32Array, Float32Builder, Int64Array, ListArray, ListBuilder, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::analysis::Analysis;
use crate::embeddings::{Embeddings, Pool};
use crate::error::{io, Error, Result};

/// The files [`write_outputs`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `embeddings.parquet`: one row per (model, record).
    pub embeddings: PathBuf,
    /// `tsne.csv`: `model,id,source,x,y`.
    pub tsne_csv: PathBuf,
    /// `tsne.png`: a panel per model.
    pub tsne_png: PathBuf,
    /// `tsne.svg`: the same figure.
    pub tsne_svg: PathBuf,
    /// `separation.json`: the [`Analysis`].
    pub separation: PathBuf,
}

/// Writes `embeddings.parquet`, `tsne.csv`, `tsne.png`, `tsne.svg` and `separation.json` into
/// `dir` (created if missing). `models` are the embeddings `analysis` was computed from.
pub fn write_outputs(dir: &Path, models: &[Embeddings], analysis: &Analysis) -> Result<Outputs> {
    if models.len() != analysis.models.len()
        || models
            .iter()
            .zip(&analysis.models)
            .any(|(m, a)| m.model != a.label || m.len() != a.tsne.len())
    {
        return Err(Error::Mismatch(
            "write_outputs: the embeddings are not the ones the analysis was computed from".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let out = Outputs {
        embeddings: dir.join("embeddings.parquet"),
        tsne_csv: dir.join("tsne.csv"),
        tsne_png: dir.join("tsne.png"),
        tsne_svg: dir.join("tsne.svg"),
        separation: dir.join("separation.json"),
    };
    write_parquet(&out.embeddings, models)?;
    write_csv(&out.tsne_csv, models, analysis)?;
    plot(&out.tsne_png, &out.tsne_svg, models, analysis)?;
    let json = serde_json::to_string_pretty(analysis).map_err(|source| Error::Json {
        path: out.separation.clone(),
        source,
    })?;
    std::fs::write(&out.separation, json + "\n").map_err(io(&out.separation))?;
    Ok(out)
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("layer", DataType::Int64, false),
        Field::new("pool", DataType::Utf8, false),
        Field::new("n_tokens", DataType::UInt64, false),
        Field::new(
            "vector",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            false,
        ),
    ])
}

fn write_parquet(path: &Path, models: &[Embeddings]) -> Result<()> {
    let arrow_err = |source| Error::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let pq_err = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let schema = Arc::new(schema());
    let file = File::create(path).map_err(io(path))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).map_err(pq_err)?;
    for m in models {
        let n = m.len();
        let mut vectors = ListBuilder::new(Float32Builder::with_capacity(m.vectors.len()))
            .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
        for i in 0..n {
            vectors.values().append_slice(m.row(i));
            vectors.append(true);
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![m.model.as_str(); n])),
                Arc::new(StringArray::from_iter_values(m.ids.iter())),
                Arc::new(StringArray::from_iter_values(m.sources.iter())),
                Arc::new(Int64Array::from(vec![m.layer; n])),
                Arc::new(StringArray::from(vec![m.pool.as_str(); n])),
                Arc::new(UInt64Array::from_iter_values(
                    m.n_tokens.iter().map(|&t| t as u64),
                )),
                Arc::new(vectors.finish()),
            ],
        )
        .map_err(arrow_err)?;
        writer.write(&batch).map_err(pq_err)?;
    }
    writer.close().map_err(pq_err)?;
    Ok(())
}

/// Reads an `embeddings.parquet` written by [`write_outputs`] back into one [`Embeddings`] per
/// model, in the order the models first appear.
pub fn read_embeddings(path: &Path) -> Result<Vec<Embeddings>> {
    let pq_err = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let bad = |message: String| Error::Mismatch(format!("{}: {message}", path.display()));
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq_err)?
        .build()
        .map_err(pq_err)?;
    let mut out: Vec<Embeddings> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("no column `{name}`")))
        };
        let strings = |name: &str| -> Result<StringArray> {
            col(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| bad(format!("column `{name}` is not a string column")))
        };
        let model = strings("model")?;
        let id = strings("id")?;
        let source = strings("source")?;
        let pool = strings("pool")?;
        let layer = col("layer")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| bad("column `layer` is not int64".into()))?;
        let n_tokens = col("n_tokens")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| bad("column `n_tokens` is not uint64".into()))?;
        let vector = col("vector")?
            .as_any()
            .downcast_ref::<ListArray>()
            .cloned()
            .ok_or_else(|| bad("column `vector` is not a list".into()))?;
        for r in 0..batch.num_rows() {
            let values = vector.value(r);
            let values = values
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| bad("column `vector` does not hold f32".into()))?;
            let label = model.value(r);
            let idx = match out.iter().position(|e| e.model == label) {
                Some(i) => i,
                None => {
                    let p: Pool = pool.value(r).parse().map_err(bad)?;
                    out.push(Embeddings {
                        model: label.to_string(),
                        layer: layer.value(r),
                        pool: p,
                        ids: Vec::new(),
                        sources: Vec::new(),
                        n_tokens: Vec::new(),
                        dim: values.len(),
                        vectors: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            let e = &mut out[idx];
            if values.len() != e.dim {
                return Err(bad(format!(
                    "row {r}: vector of {} values, model `{label}` has {}",
                    values.len(),
                    e.dim
                )));
            }
            e.ids.push(id.value(r).to_string());
            e.sources.push(source.value(r).to_string());
            e.n_tokens.push(n_tokens.value(r) as usize);
            e.vectors.extend(values.values().iter().copied());
        }
    }
    Ok(out)
}

fn write_csv(path: &Path, models: &[Embeddings], analysis: &Analysis) -> Result<()> {
    let mut s = String::from("model,id,source,x,y\n");
    for (m, a) in models.iter().zip(&analysis.models) {
        for (i, xy) in a.tsne.iter().enumerate() {
            s.push_str(&format!(
                "{},{},{},{},{}\n",
                csv_field(&m.model),
                csv_field(&m.ids[i]),
                csv_field(&m.sources[i]),
                xy[0],
                xy[1]
            ));
        }
    }
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(s.as_bytes()).map_err(io(path))?;
    Ok(())
}

/// RFC 4180 quoting where a field needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const PANEL: u32 = 620;
const LEGEND: u32 = 44;

fn plot(png: &Path, svg: &Path, models: &[Embeddings], analysis: &Analysis) -> Result<()> {
    sft_plot::register_font()?;
    let size = (PANEL * models.len() as u32, PANEL + 40 + LEGEND);
    {
        let root = BitMapBackend::new(png, size).into_drawing_area();
        draw(&root, models, analysis).map_err(|message| Error::Plot {
            path: png.to_path_buf(),
            message,
        })?;
        root.present().map_err(|e| Error::Plot {
            path: png.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    {
        let root = SVGBackend::new(svg, size).into_drawing_area();
        draw(&root, models, analysis).map_err(|message| Error::Plot {
            path: svg.to_path_buf(),
            message,
        })?;
        root.present().map_err(|e| Error::Plot {
            path: svg.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    tracing::info!(png = %png.display(), "t-SNE plot");
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    models: &[Embeddings],
    analysis: &Analysis,
) -> std::result::Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (_, h) = root.dim_in_pixel();
    let (top, rest) = root.split_vertically(40);
    let (body, legend) = rest.split_vertically(h - 40 - LEGEND);
    top.draw_text(
        "t-SNE of the PCA-reduced hidden states, coloured by source (axes have no units)",
        &("sans-serif", 18).into_font().color(&BLACK),
        (14, 12),
    )
    .map_err(|x| e(&x))?;
    let panels = body.split_evenly((1, models.len()));
    for ((area, m), a) in panels.iter().zip(models).zip(&analysis.models) {
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for p in &a.tsne {
            x0 = x0.min(p[0]);
            x1 = x1.max(p[0]);
            y0 = y0.min(p[1]);
            y1 = y1.max(p[1]);
        }
        let (px, py) = (((x1 - x0) * 0.06).max(1e-6), ((y1 - y0) * 0.06).max(1e-6));
        let title = format!("{} · layer {} · {}", a.label, a.layer, a.pool);
        let mut chart = ChartBuilder::on(area)
            .caption(&title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .y_labels(5)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()
            .map_err(|x| e(&x))?;
        for (si, source) in analysis.sources.iter().enumerate() {
            let colour = sft_plot::colour(si);
            let points: Vec<(f64, f64)> = a
                .tsne
                .iter()
                .zip(&m.sources)
                .filter(|(_, s)| *s == source)
                .map(|(p, _)| (p[0], p[1]))
                .collect();
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, colour.mix(0.75).filled())),
                )
                .map_err(|x| e(&x))?;
        }
    }
    // One legend below the panels: every panel has the same records, so the same sources.
    let mut x = 60i32;
    for (si, source) in analysis.sources.iter().enumerate() {
        let colour = sft_plot::colour(si);
        let count = models[0].sources.iter().filter(|s| *s == source).count();
        let text = format!("{source} ({count})");
        legend
            .draw(&Circle::new((x, 20), 6, colour.filled()))
            .map_err(|x| e(&x))?;
        legend
            .draw_text(
                &text,
                &("sans-serif", 17).into_font().color(&BLACK),
                (x + 14, 10),
            )
            .map_err(|x| e(&x))?;
        x += 40 + 10 * text.chars().count() as i32;
    }
    Ok(())
}
