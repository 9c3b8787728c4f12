// Every string of the start page, in English and Simplified Chinese.
import shared from './shared.js';

export default {
  en: {
    ...shared.en,
    page_title: 'Woodpecker',
    app_title: 'Woodpecker · emergency alert hub',
    intro: 'Real-time emergency alerts: the police issue an alert, responders nearby answer on their phones, coordinators organise the search.',
    pages: 'Pages',
    police: 'Police console',
    police_desc: 'Issue an alert on the map, see who is reached and who answers.',
    responder: 'Responder app',
    responder_desc: 'For phones: go on duty, receive alerts, accept, search your cell.',
    coordinator: 'Coordinator map',
    coordinator_desc: 'Watch the search grid fill in, assign cells, follow coverage.',
    demo: 'Demo sign-in',
    demo_hint: 'This hub runs as a demo. Each link opens a page already signed in.',
    open_as: '{page} — {name}',
  },
  'zh-CN': {
    ...shared['zh-CN'],
    page_title: '啄木鸟',
    app_title: '啄木鸟 · 紧急警报中心',
    intro: '实时紧急警报：警方发布警报，附近的响应人员用手机回复，协调员组织搜索。',
    pages: '页面',
    police: '警务控制台',
    police_desc: '在地图上发布警报，查看通知人数和回复情况。',
    responder: '响应人员应用',
    responder_desc: '手机使用：开始值班、接收警报、接受任务、搜索网格。',
    coordinator: '协调地图',
    coordinator_desc: '查看搜索网格进度、分配网格、跟踪覆盖率。',
    demo: '演示登录',
    demo_hint: '此中心正以演示模式运行，点击链接即可直接登录对应页面。',
    open_as: '{page} — {name}',
  },
};
