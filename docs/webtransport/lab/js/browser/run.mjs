// node run.mjs <page url>: headless Chromium (Debian's) loads the page, prints window.results.
import puppeteer from 'puppeteer-core';
const url = process.argv[2];
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: (process.env.CHROME_ARGS ?? '--no-sandbox').split(' ').filter(Boolean),
});
try {
  const page = await browser.newPage();
  page.on('console', m => console.log('page:', m.text()));
  page.on('pageerror', e => console.log('pageerror:', e.message));
  console.log('browser', await browser.version());
  await page.goto(url);
  await page.waitForFunction('window.results', { timeout: 60000 });
  console.log(JSON.stringify(await page.evaluate('window.results'), null, 1));
} finally {
  await browser.close();
}
